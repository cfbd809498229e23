"""What the apps' admin pages and management commands share, knowing none of the apps: the operators' kit."""
