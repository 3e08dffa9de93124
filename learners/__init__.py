"""DeepSpeed training of the policy and critics, and weight publishing."""
