"""Evaluation: reports of a run or a results file, results-file readers, and fusion comparisons with ablations."""
