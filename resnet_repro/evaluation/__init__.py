"""Evaluation: exact distributed top-1 / top-5 / loss; the test protocols (centre, ten-crop, multiscale)."""
