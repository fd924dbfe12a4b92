"""Fast kernels: autograd Functions and compiled or blocked steps that compute what the reference maths
(`dynlm/maths/`) and plain ops compute, in fewer passes over memory. Nothing here keeps state between calls
except what its caller hands it (a `FactoredStep`, a `WeightFactors`)."""
