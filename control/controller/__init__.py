"""The controller: reconcile loops that turn the scaling, power and guard policies into changes on the fleet."""
