"""The farm core. Headless: nothing here imports Textual (tests/unit/test_import_hygiene.py checks)."""
