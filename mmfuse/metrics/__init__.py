"""Caption metrics equal to coco-caption's (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D) and classification metrics."""
