"""The domain: job and campaign specs, their states and validation. No IO."""
