"""vLLM serving: the only place that imports vLLM."""
