"""Training Face2Diffusion (the authors released none): the mapping network with
class-guided denoising regularisation (paper §3.3-3.4) and the MSID encoder's
multi-scale ArcFace pre-training (§3.2). Command line: `python -m f2d_core.train`.

Needs requirements-train.txt (diffusers, matplotlib, tqdm); the node pack never imports
this package. Modules: losses (Eq. 1, 3, 4, 7, 8), data / crops / masks / parsing /
expression (samples), sd (SD1.x and SDXL from local files), conditioning (S*
injected as at inference), loop / state / logbook (steps, exact resume, curves),
mapping_trainer, msid_trainer, msid_eval, sampling, export, bench.
"""
