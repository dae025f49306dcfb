"""The PySide6 user interface: thin views over ``effstudio.core``."""
