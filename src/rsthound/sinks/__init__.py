"""Where `watch` sends what it finds: webhooks and Alertmanager."""
