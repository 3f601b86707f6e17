"""The networks, as plain nn.Modules whose attribute names are the checkpoint keys.

MSID (identity encoder, paper §3.2), the mapping network f_map (§3.3) and Deep3DFaceRecon's
regressor f_exp (§3.3). Nothing here reads files or knows about faces or prompts.
"""
