"""Hubs: training modules on BIG-bench tasks (build, train) and their centroids."""
