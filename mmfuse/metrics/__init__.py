"""Caption metrics (BLEU now; ROUGE-L, CIDEr-D and METEOR join them) and their reports."""
