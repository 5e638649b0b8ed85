"""The memory tiers, their one interface (base), and the hierarchy over them."""
