"""Constants shared by the data pipeline and the model stack."""

IGNORE_INDEX = -100  # label value ignored by the LM loss (LLaVA/HF convention)
IMAGE_TOKEN = "<image>"  # placeholder in conversations; one token id per image patch after tokenisation
PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
