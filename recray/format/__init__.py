"""The bitstream format: messages, run directories and their files."""
