"""tiermem: embedding inference and vector serving through six memory tiers."""
