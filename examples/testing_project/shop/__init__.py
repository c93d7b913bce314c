"""The sample shop: app code that enqueues jobs."""
