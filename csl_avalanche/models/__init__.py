"""Networks: the small students and teachers of the embedded benchmarks, the timm/torchvision
registry that resolves a name to a model, and the plain training loop the teachers use."""
