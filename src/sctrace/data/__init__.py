"""Reading, validating, preprocessing, tokenizing and pairing time-course AnnData."""
