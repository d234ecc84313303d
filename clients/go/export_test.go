package leanmq

// Test hooks for the external tests (package leanmq_test).

// PublishOutstanding is the number of unanswered publishes of c (buffered or
// written), which the broker's window bounds.
func PublishOutstanding(c *Client) int {
	c.mu.Lock()
	p := c.pub
	c.mu.Unlock()
	if p == nil {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pending)
}
