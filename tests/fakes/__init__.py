"""Scriptable fakes for the seams the workbench talks through (NVML, torch.cuda)."""
