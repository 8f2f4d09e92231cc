"""Engine replicas on Ray: the actors, their controller, and the gateway's view of them."""
