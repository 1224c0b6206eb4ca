"""testbed/: an emulated cluster on this machine (network namespaces, shaped links,
CPU quotas) so real artifacts run under board-like conditions without boards."""
