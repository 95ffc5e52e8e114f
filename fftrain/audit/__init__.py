"""`fftrain audit`: what a training set holds, measured with a trained checkpoint.

    fftrain audit --checkpoint CKPT --data data/train --verification val/lfw.bin --out audit/

Modules: `inputs` (checks, one-line errors), `embed` (the one embedding pass, shared by the
ranks), `intra` (class centres, intra-class noise), `inter` (duplicate classes within and across
datasets; the fusion step's twin), `leakage` (verification identities in training),
`distributions` (genuine / impostor histograms, EER), `report` (files and summary), `clean`
(the cleaned training set), `pipeline` (the steps together, from the parsed options to --out).
The command is fftrain/commands/audit.py.
"""
