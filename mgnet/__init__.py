"""MGNet: Multilevel Guidance-Exploration Network for human-behavior video anomaly detection."""
__version__ = "0.1.0"
