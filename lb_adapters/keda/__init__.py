"""KEDA external scaler: KEDA/HPA scale on Foresight's forecast instead of on the load already there."""
