"""The default training settings, in one place: `TrainOptions`, the controls (so the studio and the widgets) and
the CLI's help all read them from here, so changing a default is a one-line change that every face follows.

Plain numbers only: this module imports nothing, so the CLI's parser can show them without loading torch.
"""

DEFAULT_LR = 3e-2  # AdamW learning rate of the adapter factors (evidence: benchmarks/results/default_lr.md)
# How every adapter's update scale follows its rank when alpha is not given (superlora.config.RANK_SCALINGS; evidence:
# docs/benchmarks.md, "Before and after": chosen there by a rule fixed before the sweeps ended; "none" was the scale
# before it); alpha, when given, always means alpha / r, as in PEFT.
DEFAULT_RANK_SCALING = "sqrt"
DEFAULT_HEAD_LR = 1e-2  # AdamW learning rate of the modules trained in full (the classifier head); same evidence
DEFAULT_EPOCHS = 3  # run length of TrainOptions() when neither epochs nor steps is given
DEFAULT_STEPS = 150  # run length the faces (studio, CLI help, widgets) start from
DEFAULT_BATCH_SIZE = 32  # the global batch: images per optimizer step
# `pick_lr` (the faces' "pick the learning rate" option): the candidate adapter lrs, factor-2 steps around
# DEFAULT_LR, and the share of the run each probe trains (evidence: benchmarks/results/lr_probe.md)
LR_CANDIDATES = (1.5e-2, 3e-2, 6e-2)
PROBE_FRACTION = 0.25
