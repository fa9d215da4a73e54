"""Real-services test harness for teapot.kms: every process it starts, it stops."""
