"""The fixed-point format of the MNIST codec's integer decoder (recray.models.intdec and its
kernel, recray.models.intdec_kernel): units and ranges of every quantity. Part of the
codec's bitstream (``INT_FORMAT``): the tables are the same integers everywhere only while
these are."""

PIXELS = 784
LEVELS = 256
INT_FORMAT = 1  # the arithmetic of recray.models.intdec; bump on any change of it
PRECISION = 24  # constriction's range coder (Categorical): probabilities in units of 2^-24
FREE = (1 << PRECISION) - LEVELS  # what the tables sum to; the coder adds 1 to each level

Z_FRAC, Z_CLIP = 12, 16
WEIGHT_BITS = 16
ACT_FRAC, ACT_MAX = 12, 1 << 24
PARAM_FRAC = 16  # logits, means, edges
LOGS_FRAC, LOGS_MIN, LOGS_MAX = 10, -7, 6
INV_FRAC = 20
T_FRAC, T_MAX = 11, 20
TABLE_FRAC = 22  # logistic table in units of 2^-22 / FREE
MIX_FRAC = 16
MEAN_CLIP = 64
MAX_SHIFT = 24  # weight scales up to 2^24 (keeps biases below 2^46)
