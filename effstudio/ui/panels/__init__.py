"""Feature panels of the main window, one file each."""
