"""Safe scheduler-policy changes: what-if preview, canary rollout on a traffic share, analysis, promote/abort."""
