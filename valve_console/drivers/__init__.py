"""Hardware drivers: PDUs and serial devices. Headless: never imports Textual."""
