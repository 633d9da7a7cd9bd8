"""Prompt learners for a frozen SAM, as pure functions: VRP-SAM (`vrp`), ProSAM (`prosam`)."""
