"""bnpipe: experiments on BatchNormalization-first and other remedies for unstable gradients."""
