"""Training SAM: the paper's ambiguity-aware loss, simulated interactive prompting,
data from label images, and the loop used for fine-tuning and the bundled model."""
