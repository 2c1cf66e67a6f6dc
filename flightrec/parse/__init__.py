"""ftrace text → typed rows. Knows the line formats, nothing of probes or AF_XDP checks."""
