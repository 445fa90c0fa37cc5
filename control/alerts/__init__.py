"""Alert rules (from the alerts policy), the evaluator, silences and alert states."""
