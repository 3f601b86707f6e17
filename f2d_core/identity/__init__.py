"""Photos -> one person's identity: the encoder (MSID + mapping), the pipeline, the expression
input and the identity file."""
