"""deploy/: copy artifact folders to real boards over SSH, verify them there, start them."""
