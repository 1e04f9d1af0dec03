"""Agent samples as read back: time windows over an instance's stored reports."""
