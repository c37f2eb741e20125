"""Running the graph on Kubernetes (PIXART_EXECUTOR=k8s): deployment settings, per-step pod config,
multi-node training. Imported only when the k8s executor is chosen."""
