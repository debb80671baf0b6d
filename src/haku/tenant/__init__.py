"""What Haku does inside each tenant cluster: kubeadm's bootstrap objects, addons, tokens."""
