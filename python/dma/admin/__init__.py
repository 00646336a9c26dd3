"""The administration tools: install, doctor, queue control, launchers."""
