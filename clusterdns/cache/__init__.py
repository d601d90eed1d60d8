"""The cache of forwarded answers (CoreDNS's cache plugin)."""
