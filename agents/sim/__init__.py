"""The simulated GPU fleet: OpenAI-speaking virtual nodes with a performance model and a virtual NVML."""
