"""What a run learned, measured on the user's own pictures: the memorization check and the transfer report."""
