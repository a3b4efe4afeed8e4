"""The DUT-facing surface under attack (issue 15): each reproduction, bounded, on loopback."""
