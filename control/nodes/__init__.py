"""Node actions: drain, cordon, uncordon — through the API and the node-actions page, each audited."""
