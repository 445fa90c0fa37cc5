"""Metric sources of the agent: real (NVML, psutil, a vLLM/SGLang scrape) and simulated."""
