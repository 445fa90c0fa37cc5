"""Local HTTP fakes of the few cloud endpoints the providers call (Kubernetes, Azure Resource Manager); AWS uses
moto's server. They are test doubles, so they live here and never ship in the installed package."""
