"""The screens of the operator console: one module each."""
